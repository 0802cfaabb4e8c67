//! Lease reads. A leader serves linearizable reads from its lease (no
//! quorum round: `lease_reads` counts them), and a leader that was paused
//! past its lease does not serve from it: the survivors elect a new leader
//! and take a write, then a read that reached the old leader's socket while
//! it was stopped is processed the instant it resumes, while its Raft state
//! still says it leads. It must not answer with the value from before.

mod common;

use std::process::Command;
use std::time::Duration;
use std::time::Instant;

use common::Cluster;
use common::Opts;
use ringkv_proto::v1::GetRequest;
use ringkv_proto::v1::PutRequest;

const SHARDS: u32 = 2;
const SHARD: u64 = 1;
/// Bound of each wait below; the harness's Raft timings (election timeout
/// 1.5-3 s) need seconds, a starved machine more.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline of one call to a node in this test.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(ok.success(), "kill {sig} {pid} failed");
}

async fn get_on(c: &Cluster, id: u64, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut kv = c.kv(id).await.ok_or("cannot connect")?;
    let req = GetRequest {
        header: None,
        key: key.to_vec(),
    };
    match tokio::time::timeout(CALL_TIMEOUT, kv.get(req)).await {
        Err(_) => Err("timed out".into()),
        Ok(Err(s)) => Err(format!("{:?} {}", s.code(), s.message())),
        Ok(Ok(r)) => {
            let r = r.into_inner();
            Ok(r.found.then_some(r.value))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_reads_from_its_lease_and_not_once_paused_past_it() {
    let seed = common::seed(47);
    let mut c = Cluster::start(Opts {
        shards: SHARDS,
        ..Opts::default()
    })
    .await;
    let key = common::key_in_shard("t47", SHARD, SHARDS);
    let deadline = Instant::now() + STEP_TIMEOUT;
    c.put_retry(&key, b"old", deadline).await.expect("put old");
    let old = c.leader_of(SHARD).await.expect("shard has a leader");

    // 1. Reads on the leader are served from its lease.
    let before = c.node_stats(old).await.expect("node stats").lease_reads;
    loop {
        assert!(Instant::now() < deadline, "seed {seed}: no lease read on node {old}");
        if let Ok(v) = get_on(&c, old, &key).await {
            assert_eq!(v.as_deref(), Some(&b"old"[..]), "seed {seed}");
            if c.node_stats(old).await.expect("node stats").lease_reads > before {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 2. Stop the leader. The survivors elect another one and take a write.
    let mut kv_old = c.kv(old).await.expect("connect to the leader");
    let pid = c.nodes[&old].child.as_ref().expect("leader runs").id();
    signal(pid, "-STOP");
    let survivors: Vec<u64> = c.running().into_iter().filter(|n| *n != old).collect();
    let deadline = Instant::now() + STEP_TIMEOUT;
    'elected: loop {
        assert!(
            Instant::now() < deadline,
            "seed {seed}: no new leader while node {old} is stopped"
        );
        for &id in &survivors {
            if let Ok(Some(st)) = tokio::time::timeout(CALL_TIMEOUT, c.status(id)).await {
                if let Some(s) = st.shards.iter().find(|s| s.id == SHARD) {
                    if s.leader_id != 0 && s.leader_id != old {
                        break 'elected;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let put_deadline = Instant::now() + STEP_TIMEOUT;
    'written: loop {
        assert!(
            Instant::now() < put_deadline,
            "seed {seed}: no write accepted by the survivors"
        );
        for &id in &survivors {
            let Some(mut kv) = c.kv(id).await else { continue };
            let req = PutRequest {
                header: None,
                key: key.clone(),
                value: b"new".to_vec(),
            };
            if let Ok(Ok(_)) = tokio::time::timeout(CALL_TIMEOUT, kv.put(req)).await {
                break 'written;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 3. A read sent to the stopped leader waits in its socket; it resumes.
    let read_key = key.clone();
    let read = tokio::spawn(async move {
        let req = GetRequest {
            header: None,
            key: read_key,
        };
        kv_old.get(req).await
    });
    // Gives the request time to leave this process; resuming earlier only
    // lets the old leader learn of the new term first (a weaker test).
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(pid, "-CONT");
    match tokio::time::timeout(STEP_TIMEOUT, read).await {
        Err(_) => panic!("seed {seed}: the read on the resumed node {old} never finished"),
        Ok(Err(e)) => panic!("seed {seed}: read task failed: {e}"),
        Ok(Ok(Err(status))) => eprintln!("resumed old leader refused the read: {status:?}"),
        Ok(Ok(Ok(r))) => {
            let r = r.into_inner();
            assert!(
                r.found && r.value == b"new",
                "seed {seed}: stale read from the resumed old leader {old}: found {} value {:?}",
                r.found,
                String::from_utf8_lossy(&r.value)
            );
        }
    }

    // 4. Everything reads the new value afterwards, the old leader too.
    let deadline = Instant::now() + STEP_TIMEOUT;
    assert_eq!(
        c.get_retry(&key, deadline).await.expect("get after resume").as_deref(),
        Some(&b"new"[..]),
        "seed {seed}"
    );
    c.wait_ready().await;
    c.kill(old);
}
