//! Coalesced puts and gets against a real 3-node cluster. 64 tasks share
//! one client; each writes its own keys in turn and reads every write back
//! at once, so most puts and gets leave in `BatchPut` and `BatchGet`
//! batches. Every acknowledged put is read back, by the writer at once and
//! by a fresh client at the end; concurrent puts to one key leave one of
//! the written values. A client with coalescing off sends no batch. And
//! with the leader of the busiest shard killed with -9 in the middle of the
//! writes, no acknowledged coalesced put is lost.

#[path = "../../server/tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use common::Cluster;
use common::Opts;
use ringkv_client::Client;
use ringkv_client::Config;

const TASKS: usize = 64;
const PUTS_PER_TASK: usize = 30;
const SHARDS: u32 = 2;

fn key(task: usize, i: usize) -> Vec<u8> {
    format!("t21-{task:02}-{i:03}").into_bytes()
}

fn cfg() -> Config {
    Config {
        request_timeout: Duration::from_secs(60),
        max_attempts: 200,
        ..Config::default()
    }
}

/// Each task puts its keys one after another and reads each back.
async fn write_and_read_back(client: &Client, tag: &str) {
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let client = client.clone();
            let tag = tag.to_string();
            tokio::spawn(async move {
                for i in 0..PUTS_PER_TASK {
                    let v = format!("{tag}-{t}-{i}").into_bytes();
                    client
                        .put(key(t, i), &v)
                        .await
                        .map_err(|e| format!("put {t}/{i}: {e}"))?;
                    let got = client.get(key(t, i)).await.map_err(|e| format!("get {t}/{i}: {e}"))?;
                    if got.as_deref() != Some(v.as_slice()) {
                        return Err(format!("task {t} key {i}: wrote {v:?}, read back {got:?}"));
                    }
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task panicked").expect("task failed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_puts_and_gets_are_each_answered_and_durable() {
    let c = Cluster::start(Opts {
        shards: SHARDS,
        ..Opts::default()
    })
    .await;
    let client = Client::connect_with([c.addr(1), c.addr(2), c.addr(3)], cfg())
        .await
        .expect("connect");

    write_and_read_back(&client, "a").await;
    let s = client.stats();
    assert!(
        s.put_batches > 0 && s.coalesced_puts > s.put_batches,
        "64 concurrent writers to 2 shards must share batches: {s:?}"
    );
    assert!(s.get_batches > 0 && s.coalesced_gets > s.get_batches, "{s:?}");
    assert!(s.coalesced_puts <= (TASKS * PUTS_PER_TASK) as u64, "{s:?}");

    // Concurrent puts to one key: each is acknowledged, one value stays.
    let shared: Vec<_> = (0..TASKS)
        .map(|t| {
            let client = client.clone();
            tokio::spawn(async move { client.put("t21-shared", format!("w{t}")).await })
        })
        .collect();
    for t in shared {
        t.await.expect("task panicked").expect("shared put");
    }
    let last = client
        .get("t21-shared")
        .await
        .expect("get shared")
        .expect("shared key present");
    let last = String::from_utf8(last).expect("utf8");
    assert!((0..TASKS).any(|t| last == format!("w{t}")), "unexpected value {last}");

    // A put the server refuses (an empty key) fails alone: the puts it
    // shared a batch with still succeed. Keys in the empty key's shard,
    // so that they queue together.
    let shard = client.shard_of("").expect("routed");
    let peers: Vec<Vec<u8>> = (0..10_000)
        .map(|i| format!("t21-peer-{i}").into_bytes())
        .filter(|k| client.shard_of(k) == Some(shard))
        .take(32)
        .collect();
    for round in 0..5 {
        let before = client.stats().coalesced_puts;
        // The bad put is started in the middle, so that it queues behind
        // the first valid ones and leaves in a batch with others.
        let spawn_good = |k: &Vec<u8>| {
            let (client, k) = (client.clone(), k.clone());
            tokio::spawn(async move { client.put(k, format!("r{round}")).await })
        };
        let mut good: Vec<_> = peers[..16].iter().map(spawn_good).collect();
        let bad = {
            let client = client.clone();
            tokio::spawn(async move { client.put("", "x").await })
        };
        good.extend(peers[16..].iter().map(spawn_good));
        for g in good {
            g.await
                .expect("task panicked")
                .expect("a valid put next to an invalid one");
        }
        let e = bad.await.expect("task panicked").expect_err("an empty key is refused");
        assert_eq!(e.kind(), ringkv_client::ErrorKind::InvalidArgument, "{e}");
        assert!(
            client.stats().coalesced_puts > before,
            "the round's puts shared batches"
        );
    }
    for k in &peers {
        assert_eq!(client.get(k).await.expect("get peer"), Some(b"r4".to_vec()));
    }

    // A fresh client (no coalescing) sees every acknowledged put.
    let plain = Client::connect_with(
        [c.addr(2)],
        Config {
            put_batch_keys_max: 1,
            get_batch_keys_max: 1,
            ..cfg()
        },
    )
    .await
    .expect("connect plain");
    for t in 0..TASKS {
        let keys: Vec<Vec<u8>> = (0..PUTS_PER_TASK).map(|i| key(t, i)).collect();
        let got = plain.batch_get(&keys).await.expect("batch get");
        for (i, v) in got.into_iter().enumerate() {
            assert_eq!(v, Some(format!("a-{t}-{i}").into_bytes()), "task {t} key {i}");
        }
    }

    // With coalescing off, nothing is batched.
    write_and_read_back(&plain, "b").await;
    let s = plain.stats();
    assert_eq!(
        (s.put_batches, s.coalesced_puts, s.get_batches, s.coalesced_gets),
        (0, 0, 0, 0),
        "{s:?}"
    );
    let v = client.get(key(TASKS - 1, PUTS_PER_TASK - 1)).await.expect("get");
    assert_eq!(v, Some(format!("b-{}-{}", TASKS - 1, PUTS_PER_TASK - 1).into_bytes()));
}

/// Bound on the fault run (the waits below poll a condition, never sleep
/// a fixed time).
const FAULT_RUN_TIMEOUT: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_coalesced_put_is_lost_when_a_leader_is_killed() {
    let mut c = Cluster::start(Opts {
        shards: SHARDS,
        ..Opts::default()
    })
    .await;
    let client = Client::connect_with([c.addr(1), c.addr(2), c.addr(3)], cfg())
        .await
        .expect("connect");
    let mut per_shard: BTreeMap<u64, usize> = BTreeMap::new();
    for t in 0..TASKS {
        for i in 0..PUTS_PER_TASK {
            *per_shard
                .entry(client.shard_of(key(t, i)).expect("routed"))
                .or_default() += 1;
        }
    }
    let (&busiest, _) = per_shard.iter().max_by_key(|(_, n)| **n).expect("keys");
    let victim = c.leader_of(busiest).await.expect("busiest shard has a leader");
    let total = (TASKS * PUTS_PER_TASK) as u64;
    let acked = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + FAULT_RUN_TIMEOUT;

    // Each task writes its keys in turn; it keeps going past an error and
    // reports which puts were acknowledged and which failed.
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let client = client.clone();
            let acked = acked.clone();
            tokio::spawn(async move {
                let mut outcome = Vec::with_capacity(PUTS_PER_TASK);
                for i in 0..PUTS_PER_TASK {
                    let r = client.put(key(t, i), format!("k-{t}-{i}")).await;
                    if r.is_ok() {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    outcome.push(r);
                }
                outcome
            })
        })
        .collect();
    while acked.load(Ordering::Relaxed) < total / 3 {
        assert!(
            Instant::now() < deadline,
            "a third of the puts not acknowledged in time"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    c.kill(victim);
    eprintln!(
        "killed node {victim}, leader of shard {busiest}, after {} acknowledged puts",
        acked.load(Ordering::Relaxed)
    );
    let mut outcomes = Vec::new();
    for h in tasks {
        let r = tokio::time::timeout_at(deadline.into(), h)
            .await
            .expect("writers finish within the run timeout")
            .expect("writer task");
        outcomes.push(r);
    }
    let s = client.stats();
    eprintln!("client stats {s:?}");
    assert!(s.put_batches > 0, "{s:?}");

    // Every acknowledged put is there; a failed one must have been
    // reported as possibly applied or definitely not, and then either
    // value is fine only when indeterminate.
    let mut failed = 0;
    for (t, outcome) in outcomes.iter().enumerate() {
        let keys: Vec<Vec<u8>> = (0..PUTS_PER_TASK).map(|i| key(t, i)).collect();
        let got = client.batch_get(&keys).await.expect("final batch get");
        for (i, (r, v)) in outcome.iter().zip(got).enumerate() {
            let want = format!("k-{t}-{i}").into_bytes();
            match r {
                Ok(()) => assert_eq!(v, Some(want), "acknowledged put {t}/{i} lost"),
                Err(e) if e.is_indeterminate() => failed += 1,
                Err(e) => {
                    failed += 1;
                    assert_eq!(v, None, "put {t}/{i} failed definitely ({e}) but was applied");
                }
            }
        }
    }
    assert_eq!(
        failed, 0,
        "with a 60 s deadline every put rides through one node's loss"
    );
}
