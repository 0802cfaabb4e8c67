//! A replica never serves the torn data of a snapshot install.
//!
//! Installing a snapshot deletes the replica's old data, ingests the
//! snapshot's, then records the new applied state; a stale read in between
//! used to find keys missing that every state of the shard holds. Shard 1's
//! follower F holds the first keys, goes down while more are written and
//! the log is purged, and comes back with the failpoint
//! `snapshot.install_slow`, which pauses its install after the deletion.
//! Stale reads of the first keys on F must then return their value or be
//! refused, never "not found"; at least one must have been refused, which
//! shows the reads met the install.

mod common;

use std::time::Duration;
use std::time::Instant;

use common::Cluster;
use common::Opts;
use ringkv_proto::v1::Consistency;
use ringkv_proto::v1::GetRequest;
use ringkv_proto::v1::RequestHeader;

const SHARD: u64 = 1;
/// Keys F holds before it goes down: read during its install.
const OLD_KEYS: usize = 60;
/// Keys written while F is down, so that its catch-up needs a snapshot.
const NEW_KEYS: usize = 120;
/// Stale reads of F after it restarted, at most.
const READS_MAX: usize = 20_000;

fn value_of(i: usize, seed: u64) -> Vec<u8> {
    format!("t41-value-{i}-{seed}").into_bytes()
}

fn stale_get(key: &[u8]) -> GetRequest {
    GetRequest {
        header: Some(RequestHeader {
            consistency: Consistency::Stale as i32,
            ..RequestHeader::default()
        }),
        key: key.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_reads_never_see_a_half_installed_snapshot() {
    let seed = common::seed(41);
    let shards = 3;
    let mut c = Cluster::start(Opts {
        shards,
        status_ports: true,
        extra_args: ["--snapshot-logs-since-last", "50", "--snapshot-logs-to-keep", "0"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ..Opts::default()
    })
    .await;
    c.rebalance_off(1).await;
    let key = |i: usize| common::key_in_shard(&format!("t41-{seed}-{i}"), SHARD, shards);

    let deadline = Instant::now() + Duration::from_secs(120);
    for i in 0..OLD_KEYS {
        c.put_retry(&key(i), &value_of(i, seed), deadline)
            .await
            .unwrap_or_else(|e| panic!("put old key {i}: {e}"));
    }
    let leader = c.leader_of(SHARD).await.expect("shard 1 has a leader");
    let follower = (1..=3u64).rev().find(|id| *id != leader).expect("a follower");

    // F's own replica holds every old key before it goes down.
    let mut kv = c.kv(follower).await.expect("connect to the follower");
    for i in 0..OLD_KEYS {
        loop {
            match kv.get(stale_get(&key(i))).await {
                Ok(r) if r.get_ref().found => break,
                _ => {
                    assert!(Instant::now() < deadline, "node {follower} never applied old key {i}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    let f_applied = c.applied_on(follower, SHARD).await.expect("follower reports shard 1");
    eprintln!("seed {seed}: leader {leader}, follower {follower} (applied {f_applied}) goes down");
    c.kill(follower);

    let deadline = Instant::now() + Duration::from_secs(180);
    for i in OLD_KEYS..OLD_KEYS + NEW_KEYS {
        c.put_retry(&key(i), &value_of(i, seed), deadline)
            .await
            .unwrap_or_else(|e| panic!("put new key {i} with node {follower} down: {e}"));
    }
    // Snapshot and purge on both survivors past what F holds.
    for id in c.running() {
        loop {
            let res = c.trigger_snapshot(id, SHARD).await.map(|r| r.purged_upto);
            match res {
                Ok(p) if p > f_applied + 10 => break,
                other => {
                    assert!(
                        Instant::now() < deadline,
                        "node {id} never purged shard {SHARD} past {f_applied}: {other:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
    }

    // F returns and pauses in the middle of its install; read it meanwhile.
    c.opts.env.insert(
        follower,
        vec![("RINGKV_FAILPOINTS".to_string(), "snapshot.install_slow=1".to_string())],
    );
    c.restart(follower);
    let status_addr = c.nodes[&follower].status_addr.clone().expect("status port");
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut served, mut refused, mut reads_after_install) = (0usize, 0usize, 0usize);
    let mut last_error = String::new();
    // The replica's `ringkv_snapshot_installing` gauge, as operators see it.
    let installing_gauge = format!("ringkv_snapshot_installing{{node=\"{follower}\",shard=\"{SHARD}\"}}");
    let mut gauge_seen_up = false;
    for n in 0..READS_MAX {
        let installed = c.node_stats(follower).await.is_some_and(|s| s.snapshots_installed >= 1);
        if installed {
            reads_after_install += 1;
            if reads_after_install > OLD_KEYS {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node {follower} installed no snapshot within 120 s ({served} reads served, {refused} refused, last error: {last_error})"
        );
        let i = n % OLD_KEYS;
        let Some(mut kv) = c.kv(follower).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        match kv.get(stale_get(&key(i))).await {
            Ok(r) => {
                let r = r.into_inner();
                assert!(
                    r.found,
                    "seed {seed}: old key {i} not found on node {follower} (read {n}, {served} served, {refused} refused before): a torn install was read"
                );
                assert_eq!(r.value, value_of(i, seed), "seed {seed}: old key {i} has a wrong value");
                served += 1;
            }
            Err(s) => {
                if s.code() == tonic::Code::Unavailable && s.message().contains("installing a snapshot") {
                    refused += 1;
                    if !gauge_seen_up {
                        gauge_seen_up = common::metric(&status_addr, &installing_gauge) == Some(1.0);
                    }
                }
                last_error = format!("{:?} {}", s.code(), s.message());
            }
        }
    }
    let counted = common::metric(&status_addr, "ringkv_reads_during_install_total").unwrap_or(0.0);
    eprintln!("node {follower}: {served} reads served, {refused} refused during the install (metric {counted})");
    assert!(
        reads_after_install > OLD_KEYS,
        "stopped after {READS_MAX} reads before the install ended"
    );
    assert!(
        refused >= 1 && counted >= 1.0,
        "no read was refused during the install ({served} served, metric {counted}): the test missed the window"
    );
    assert!(
        gauge_seen_up,
        "{installing_gauge} never read 1 while reads were refused"
    );
    assert_eq!(
        common::metric(&status_addr, &installing_gauge),
        Some(0.0),
        "{installing_gauge} after the install"
    );
    c.wait_ready().await;
}
