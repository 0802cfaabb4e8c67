//! A leader replicates an entry while its own WAL sync of it runs
//! (`raft.overlap_leader_sync`), but the entry must not commit before the
//! leader's copy is on disk: otherwise a leader that crashed before its
//! sync could have had a write acknowledged on its own unsynced copy plus
//! one follower's, and lose it when the other follower wins the next
//! election with the crashed leader's vote.
//!
//! Every node runs the `storage.leader_sync_slow` failpoint: each of its
//! leader appends waits `LEADER_SYNC_SLOW_MS` before it is even written,
//! while the followers get the entry at once and sync it in well under a
//! second. A put must therefore take at least that long, and the leader
//! must report that its appends did go out before their sync.
//!
//! A one-node cluster has no follower whose acceptance could be held back:
//! its leader commits on its own flush, so it must never report an append
//! flushed before its sync.
//!
//! A leader killed while its sync is held has sent the followers an entry
//! its own disk never got. Restarted, it must not lead the same term again:
//! it would append a different entry under that entry's log id, which the
//! followers take for the one they hold, and a write it acknowledged would
//! be missing from every other replica.

mod common;

use std::time::Duration;
use std::time::Instant;

use common::Cluster;
use common::Opts;
use ringkv_proto::v1::kv_client::KvClient;
use ringkv_proto::v1::GetRequest;
use ringkv_proto::v1::PutRequest;
use ringkv_server::failpoint::STORAGE_LEADER_SYNC_SLOW_MS as LEADER_SYNC_SLOW_MS;
use tonic::transport::Channel;

const SHARDS: u32 = 1;
const SHARD: u64 = 1;
/// Puts measured, one after another.
const PUTS: usize = 3;
/// Of those, how many must succeed (a leader change may fail one).
const PUTS_MEASURED_MIN: usize = 2;
/// Longest one put may take: a few held syncs on a starved machine.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Slack for clocks: the hold is a sleep on the leader, the put's duration
/// is measured here.
const MARGIN_MS: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_commits_before_the_leaders_copy_is_on_disk() {
    let seed = common::seed(31);
    let c = start_slow_syncing(3, seed).await;
    let leader = ready_leader(&c, seed).await;
    let status = c.nodes[&leader].status_addr.clone().expect("status port");
    let mut kv = c.kv(leader).await.expect("kv");

    let mut measured = 0;
    for i in 0..PUTS {
        let key = format!("t31-{seed}-{i}").into_bytes();
        let value = format!("v{i}-{seed}").into_bytes();
        let mut req = tonic::Request::new(PutRequest {
            header: None,
            key: key.clone(),
            value: value.clone(),
        });
        req.set_timeout(REQUEST_TIMEOUT);
        let started = Instant::now();
        let r = kv.put(req).await;
        let took = started.elapsed();
        if let Err(e) = &r {
            // Leadership may move while syncs are held; a put that failed
            // was not acknowledged and proves nothing either way.
            eprintln!("seed {seed}: put {i} via node {leader} failed ({e}); skipped");
            continue;
        }
        measured += 1;
        eprintln!("put {i} via leader {leader} took {took:?}");
        assert!(
            took >= Duration::from_millis(LEADER_SYNC_SLOW_MS - MARGIN_MS),
            "seed {seed}: put {i} was acknowledged after {took:?}, before its leader's held sync \
             ({LEADER_SYNC_SLOW_MS} ms) could have finished: it committed on an unsynced leader copy"
        );
        assert_reads_back(&mut kv, key, &value, seed).await;
    }
    assert!(
        measured >= PUTS_MEASURED_MIN,
        "seed {seed}: only {measured} of {PUTS} puts succeeded: too few to show anything"
    );
    let early = common::metric(&status, "ringkv_raft_leader_appends_before_sync_total").unwrap_or(0.0);
    assert!(
        early > 0.0,
        "seed {seed}: leader {leader} reports no append that went out before its sync"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_voter_leader_syncs_before_it_reports_an_append() {
    let seed = common::seed(3101);
    let c = start_slow_syncing(1, seed).await;
    assert_eq!(ready_leader(&c, seed).await, 1);
    let status = c.nodes[&1].status_addr.clone().expect("status port");
    let mut kv = c.kv(1).await.expect("kv");

    for i in 0..PUTS {
        let key = format!("t31-single-{seed}-{i}").into_bytes();
        let mut req = tonic::Request::new(PutRequest {
            header: None,
            key: key.clone(),
            value: b"v".to_vec(),
        });
        req.set_timeout(REQUEST_TIMEOUT);
        kv.put(req)
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: put {i}: {e}"));
        assert_reads_back(&mut kv, key, b"v", seed).await;
    }
    let early =
        common::metric(&status, "ringkv_raft_leader_appends_before_sync_total").expect("the metric is exported");
    assert_eq!(
        early, 0.0,
        "seed {seed}: a single-voter leader reported appends flushed before their sync"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_before_its_sync_does_not_lead_that_term_again() {
    let seed = common::seed(3102);
    // Followers must not elect anyone while the killed leader restarts:
    // only then can it come back as the leader of its old term.
    let mut c = start(3, seed, QUIET_ELECTION_TIMEOUT_MS).await;
    let mut attempt = 0;
    let old = loop {
        attempt += 1;
        let leader = ready_leader(&c, seed).await;
        match kill_before_its_sync(&mut c, leader, seed).await {
            Ok(()) => break leader,
            Err(why) if attempt < KILL_ATTEMPTS_MAX => {
                eprintln!("seed {seed}: attempt {attempt}: {why}; trying again")
            }
            Err(why) => panic!(
                "seed {seed}: in each of {KILL_ATTEMPTS_MAX} attempts the kill came too late ({why}): \
                 rerun on a less loaded machine"
            ),
        }
    };

    // Acknowledged after the restart, by whichever node leads now.
    let key = format!("t31-acknowledged-{seed}").into_bytes();
    let value = format!("acknowledged-{seed}").into_bytes();
    let deadline = Instant::now() + Duration::from_secs(120);
    c.put_retry(&key, &value, deadline)
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: no put succeeded after the restart: {e}"));
    let acked_by = c.leader_of(SHARD).await.expect("a leader after the put");

    // The write survives the loss of the node that acknowledged it.
    c.kill(acked_by);
    let got = c
        .get_retry(&key, deadline)
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: no read after node {acked_by} was killed: {e}"));
    assert_eq!(
        got.as_deref(),
        Some(&value[..]),
        "seed {seed}: a put acknowledged by node {acked_by} is missing once it is gone \
         (the old leader was {old})"
    );
}

/// Attempts at killing a leader inside its held sync: a starved machine
/// may see the followers' copies, or run the kill, only after the hold.
const KILL_ATTEMPTS_MAX: u32 = 3;

/// Sends a put to `leader`, kills it once both followers hold the entry and
/// restarts it at once. `Err` (why) when the kill did not catch the
/// leader's sync held: the followers got the entry only after the hold, or
/// the restarted leader's disk has the entry.
async fn kill_before_its_sync(c: &mut Cluster, leader: u64, seed: u64) -> Result<(), String> {
    let followers: Vec<u64> = c.running().into_iter().filter(|id| *id != leader).collect();
    let before: Vec<u64> = followers.iter().map(|id| last_log_index(c, *id, seed)).collect();
    let leader_before = last_log_index(c, leader, seed);

    // An entry the followers hold and the leader has not written yet.
    let mut kv = c.kv(leader).await.expect("kv");
    let mut req = tonic::Request::new(PutRequest {
        header: None,
        key: format!("t31-unsynced-{seed}").into_bytes(),
        value: b"never acknowledged".to_vec(),
    });
    req.set_timeout(REQUEST_TIMEOUT);
    let unsynced_put = tokio::spawn(async move { kv.put(req).await });
    let sent = Instant::now();
    let deadline = sent + Duration::from_secs(20);
    while followers
        .iter()
        .zip(&before)
        .any(|(id, b)| last_log_index(c, *id, seed) <= *b)
    {
        assert!(
            Instant::now() < deadline,
            "seed {seed}: the followers never got the entry"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if sent.elapsed() >= Duration::from_millis(LEADER_SYNC_SLOW_MS) {
        // The put ends on its own (acknowledged or not): nothing to undo.
        let _ = unsynced_put.await;
        return Err(format!(
            "the followers got the entry only after {:?}, when the leader's held sync may have ended",
            sent.elapsed()
        ));
    }
    c.kill(leader);
    unsynced_put.abort();
    c.restart(leader);
    eprintln!(
        "seed {seed}: leader {leader} killed {:?} after the put and restarted",
        sent.elapsed()
    );
    // What the restarted node read from its disk, before anyone can have
    // replicated to it (nobody is elected for seconds). Everything before
    // the put was acknowledged, so synced: an index below that is
    // openraft's initial report, before it read the log.
    let up_by = Instant::now() + Duration::from_secs(60);
    let recovered = loop {
        if let Some(i) = try_last_log_index(c, leader).filter(|i| *i >= leader_before) {
            break i;
        }
        assert!(Instant::now() < up_by, "seed {seed}: node {leader} did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if recovered > leader_before {
        return Err(format!(
            "node {leader} restarted with last log index {recovered} (before the put: {leader_before}): \
             its held sync ended before the kill"
        ));
    }
    Ok(())
}

/// Index of the last log entry of the shard on node `id`, from one read
/// of its metrics.
fn last_log_index(c: &Cluster, id: u64, seed: u64) -> u64 {
    try_last_log_index(c, id).unwrap_or_else(|| panic!("seed {seed}: node {id} reports no last log index"))
}

/// [`last_log_index`], or `None` while node `id` does not report it (not
/// up yet, or its shard not open yet).
fn try_last_log_index(c: &Cluster, id: u64) -> Option<u64> {
    let addr = c.nodes[&id].status_addr.clone().expect("status port");
    let text = common::metrics_text(&addr)?;
    let series = |name: &str| common::find_metric(&text, &format!("{name}{{node=\"{id}\",shard=\"{SHARD}\"}}"));
    Some((series("ringkv_raft_last_applied_index")? + series("ringkv_raft_apply_lag_entries")?) as u64)
}

/// Election timeouts (min, max) long enough that the followers stay quiet
/// while a killed leader restarts on a loaded machine.
const QUIET_ELECTION_TIMEOUT_MS: (u64, u64) = (8_000, 12_000);

/// A cluster of `nodes` with one shard, every node holding its leader
/// appends (`storage.leader_sync_slow`).
async fn start_slow_syncing(nodes: u64, seed: u64) -> Cluster {
    start(nodes, seed, Opts::default().election_timeout_ms).await
}

async fn start(nodes: u64, seed: u64, election_timeout_ms: (u64, u64)) -> Cluster {
    let fp = vec![(
        "RINGKV_FAILPOINTS".to_string(),
        "storage.leader_sync_slow=100000".to_string(),
    )];
    eprintln!("seed {seed}: {nodes} node(s)");
    Cluster::start(Opts {
        nodes,
        shards: SHARDS,
        status_ports: true,
        env: (1..=nodes).map(|id| (id, fp.clone())).collect(),
        election_timeout_ms,
        ..Opts::default()
    })
    .await
}

/// The shard's leader, once a put succeeded: the first put also waits for
/// the layout to be confirmed, before which puts fail without reaching
/// Raft.
async fn ready_leader(c: &Cluster, seed: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    c.put_retry(format!("t31-{seed}-warm-up").as_bytes(), b"w", deadline)
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: no put succeeded: {e}"));
    loop {
        if let Some(l) = c.leader_of(SHARD).await {
            return l;
        }
        assert!(Instant::now() < deadline, "seed {seed}: shard {SHARD} has no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An acknowledged put's value reads back (linearizable get).
async fn assert_reads_back(kv: &mut KvClient<Channel>, key: Vec<u8>, value: &[u8], seed: u64) {
    let shown = String::from_utf8_lossy(&key).into_owned();
    let got = kv
        .get(GetRequest { header: None, key })
        .await
        .expect("get")
        .into_inner();
    assert!(got.found, "seed {seed}: acknowledged {shown} is missing");
    assert_eq!(got.value, value, "seed {seed}: {shown} read back");
}
