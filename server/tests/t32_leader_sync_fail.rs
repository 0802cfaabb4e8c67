//! A leader hands its own log appends to Raft before their WAL sync
//! (`raft.overlap_leader_sync`), so Raft counts them as on disk at once. If
//! the write then fails, Raft cannot take that back: the node must stop
//! rather than go on with a log Raft believes it has. Nothing is lost,
//! because no follower acceptance of the append was passed on before the
//! sync (t31), and the node rejoins once restarted.
//!
//! One node is restarted with `storage.leader_sync_fail=1`, which fails the
//! group-commit batch (unwritten) of its first leader append that returned
//! before its sync. Leadership of the shard is then moved to it: the new
//! leader's first entry fails, and the process must abort.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;
use std::time::Instant;

use common::Cluster;
use common::Opts;
use ringkv_proto::v1::TransferLeaderRequest;

const SHARDS: u32 = 1;
const SHARD: u64 = 1;
/// Keys written before the failure, and again after it.
const KEYS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_log_write_fails_after_the_handoff_aborts_and_loses_nothing() {
    let seed = common::seed(32);
    let mut c = Cluster::start(Opts {
        shards: SHARDS,
        ..Opts::default()
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut acked = Vec::new();
    for i in 0..KEYS {
        let (k, v) = (format!("t32-{seed}-before-{i}"), format!("v{i}"));
        c.put_retry(k.as_bytes(), v.as_bytes(), deadline)
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: put {k}: {e}"));
        acked.push((k, v));
    }

    let leader = c.leader_of(SHARD).await.expect("a leader after writes");
    let victim = c.running().into_iter().find(|&id| id != leader).expect("a follower");
    eprintln!("seed {seed}: shard {SHARD} led by {leader}; node {victim} restarts with a failing leader write");
    c.kill(victim);
    c.opts.env.insert(
        victim,
        vec![(
            "RINGKV_FAILPOINTS".to_string(),
            "storage.leader_sync_fail=1".to_string(),
        )],
    );
    c.restart(victim);
    c.wait_ready().await;

    // Move the leadership until the victim takes it and dies of it.
    let status = loop {
        if let Some(status) = c.exited(victim) {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: node {victim} kept running: it never led, or went on after its log write failed"
        );
        for id in c.running().into_iter().filter(|&id| id != victim) {
            if let Some(mut admin) = c.admin(id).await {
                let _ = admin
                    .transfer_leader(c.admin_request(TransferLeaderRequest {
                        shard_id: SHARD,
                        to_node: victim,
                    }))
                    .await;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(
        status.signal(),
        Some(common::SIGABRT),
        "seed {seed}: node {victim} ended with {status:?}, not by abort"
    );
    let log = std::fs::read_to_string(&c.nodes[&victim].log).expect("victim log");
    assert!(
        log.contains("a leader's log append failed after it was queued; aborting"),
        "seed {seed}: node {victim}'s log does not say why it stopped"
    );

    // The other two carry on, with everything acknowledged.
    for i in 0..KEYS {
        let (k, v) = (format!("t32-{seed}-after-{i}"), format!("w{i}"));
        c.put_retry(k.as_bytes(), v.as_bytes(), deadline)
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: put {k} without node {victim}: {e}"));
        acked.push((k, v));
    }
    for (k, v) in &acked {
        let got = c.get_retry(k.as_bytes(), deadline).await;
        assert_eq!(
            got,
            Ok(Some(v.clone().into_bytes())),
            "seed {seed}: acknowledged {k} after node {victim} aborted"
        );
    }

    // Restarted without the failpoint, it catches up from what it had.
    c.opts.env.remove(&victim);
    c.restart(victim);
    c.wait_ready().await;
    let target = c.applied_on(leader, SHARD).await;
    loop {
        let (mine, theirs) = (c.applied_on(victim, SHARD).await, c.applied_on(leader, SHARD).await);
        if mine.is_some() && mine >= target {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: restarted node {victim} applied {mine:?} of shard {SHARD}, leader {leader} {theirs:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
