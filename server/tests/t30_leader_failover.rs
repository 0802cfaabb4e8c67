//! kill -9 the leader of a shard: writes to it succeed again on the
//! surviving majority, and what was written before is still there.

mod common;

use std::time::Duration;
use std::time::Instant;

use common::Cluster;
use common::Opts;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_resume_after_leader_kill() {
    common::seed(30);
    let shards = 4;
    let mut c = Cluster::start(Opts {
        shards,
        ..Opts::default()
    })
    .await;
    let key = common::key_in_shard("t30", 2, shards);
    let deadline = Instant::now() + Duration::from_secs(60);
    c.put_retry(&key, b"before", deadline).await.expect("put before kill");
    let leader = c.leader_of(2).await.expect("shard 2 has a leader");
    c.kill(leader);
    let killed_at = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(120);
    assert_eq!(
        c.get_retry(&key, deadline).await.expect("get after kill").as_deref(),
        Some(&b"before"[..])
    );
    c.put_retry(&key, b"after", deadline).await.expect("put after kill");
    eprintln!(
        "shard 2 writable again {:?} after killing its leader (node {leader})",
        killed_at.elapsed()
    );
    let new_leader = c.leader_of(2).await.expect("new leader");
    assert_ne!(new_leader, leader);
    assert_eq!(
        c.get_retry(&key, deadline).await.expect("get").as_deref(),
        Some(&b"after"[..])
    );
    // Every other shard is writable too.
    for s in 1..=u64::from(shards) {
        let k = common::key_in_shard("t30-all", s, shards);
        c.put_retry(&k, b"x", deadline)
            .await
            .unwrap_or_else(|e| panic!("shard {s}: {e}"));
    }
    // The old leader rejoins and catches up.
    c.restart(leader);
    c.wait_ready().await;
}
