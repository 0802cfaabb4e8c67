//! 5,000 operations (CAS counter increments, puts and reads) while the
//! leader node of the busiest shard is killed with -9 at about a third of
//! the run and restarted at about two thirds. Two workers share one client
//! (their puts coalesce into one batch and session sequence), the other two
//! have a client each (their batches meet at the shard leader, which merges
//! them into one entry of several sessions). The application sees no
//! error, every read returns the latest acknowledged value (a retried put
//! applied again after a later one would show as an older value), and every
//! counter equals its acknowledged increments (no write applied twice, none
//! lost).

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
use rand::rngs::StdRng;
use rand::Rng;
use rand::SeedableRng;
use ringkv_client::Client;
use ringkv_client::Config;

const OPS: u64 = 5_000;
const WORKERS: u64 = 4;
const COUNTERS_PER_WORKER: usize = 3;
const PLAIN_PER_WORKER: usize = 12;
/// Bound on the whole run (the loop never waits on a fixed sleep).
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

fn counter_key(w: u64, i: usize) -> Vec<u8> {
    format!("t10-counter-{w}-{i}").into_bytes()
}

fn plain_key(w: u64, i: usize) -> Vec<u8> {
    format!("t10-plain-{w}-{i}").into_bytes()
}

/// What one worker saw: acknowledged increments per counter.
struct WorkerResult {
    increments: BTreeMap<Vec<u8>, u64>,
    ops: u64,
}

/// One worker: its own keys, operations in sequence, a local model of the
/// latest acknowledged value of each key.
async fn worker(client: Client, w: u64, seed: u64, ops: u64, done: Arc<AtomicU64>) -> Result<WorkerResult, String> {
    let mut rng = StdRng::seed_from_u64(seed ^ (w * 0x9E37_79B9));
    let counters: Vec<Vec<u8>> = (0..COUNTERS_PER_WORKER).map(|i| counter_key(w, i)).collect();
    let plains: Vec<Vec<u8>> = (0..PLAIN_PER_WORKER).map(|i| plain_key(w, i)).collect();
    let mut model: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
    let mut increments: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    for n in 0..ops {
        let roll = rng.gen_range(0..100);
        if roll < 40 {
            let k = &counters[rng.gen_range(0..counters.len())];
            let cur = increments.get(k).copied().unwrap_or(0);
            let expected = (cur > 0).then(|| cur.to_string().into_bytes());
            let new = (cur + 1).to_string().into_bytes();
            let out = client
                .compare_and_swap(k, expected.as_deref(), Some(&new))
                .await
                .map_err(|e| format!("op {n}: CAS {}: {e} ({:?})", String::from_utf8_lossy(k), e.kind()))?;
            if !out.succeeded {
                return Err(format!(
                    "op {n}: CAS {} {:?} -> {} failed, current {:?}: a write was applied twice or lost",
                    String::from_utf8_lossy(k),
                    expected.map(|e| String::from_utf8_lossy(&e).into_owned()),
                    cur + 1,
                    out.previous.map(|p| String::from_utf8_lossy(&p).into_owned())
                ));
            }
            increments.insert(k.clone(), cur + 1);
            model.insert(k.clone(), Some(new));
        } else if roll < 75 {
            let k = &plains[rng.gen_range(0..plains.len())];
            let v = format!("w{w}-op{n}-{}", rng.gen::<u32>()).into_bytes();
            client
                .put(k, &v)
                .await
                .map_err(|e| format!("op {n}: put {}: {e} ({:?})", String::from_utf8_lossy(k), e.kind()))?;
            model.insert(k.clone(), Some(v));
        } else {
            let k = if rng.gen_bool(0.5) {
                &counters[rng.gen_range(0..counters.len())]
            } else {
                &plains[rng.gen_range(0..plains.len())]
            };
            let got = client
                .get(k)
                .await
                .map_err(|e| format!("op {n}: get {}: {e} ({:?})", String::from_utf8_lossy(k), e.kind()))?;
            let want = model.get(k).cloned().flatten();
            if got != want {
                return Err(format!(
                    "op {n}: get {} returned {:?}, latest acknowledged is {:?}",
                    String::from_utf8_lossy(k),
                    got.map(|g| String::from_utf8_lossy(&g).into_owned()),
                    want.map(|g| String::from_utf8_lossy(&g).into_owned())
                ));
            }
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(WorkerResult { increments, ops })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_loop_sees_no_error_and_no_double_apply() {
    let seed = common::seed(10);
    let c = Cluster::start(Opts::default()).await;
    let cfg = Config {
        request_timeout: Duration::from_secs(90),
        max_attempts: 1000,
        ..Config::default()
    };
    let client = Client::connect_with(c.nodes.values().map(|n| n.addr.clone()), cfg.clone())
        .await
        .expect("connect");
    // Workers 0 and 1 share `client`; 2 and 3 each have their own.
    let mut clients = vec![client.clone(), client.clone()];
    for _ in 2..WORKERS {
        let own = Client::connect_with(c.nodes.values().map(|n| n.addr.clone()), cfg.clone())
            .await
            .expect("connect");
        clients.push(own);
    }

    // The busiest shard: the one holding most of the test's keys.
    let mut per_shard: BTreeMap<u64, usize> = BTreeMap::new();
    for w in 0..WORKERS {
        let keys = (0..COUNTERS_PER_WORKER)
            .map(|i| counter_key(w, i))
            .chain((0..PLAIN_PER_WORKER).map(|i| plain_key(w, i)));
        for k in keys {
            *per_shard.entry(client.shard_of(&k).expect("routed")).or_default() += 1;
        }
    }
    let (&busiest, &nkeys) = per_shard.iter().max_by_key(|(_, n)| **n).expect("keys");
    let victim = c.leader_of(busiest).await.expect("busiest shard has a leader");
    eprintln!("busiest shard {busiest} ({nkeys} keys), leader node {victim}: killed at ~1/3, restarted at ~2/3");

    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + RUN_TIMEOUT;
    let nemesis = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut c = c;
            let wait_for = |n: u64| {
                let done = done.clone();
                async move {
                    while done.load(Ordering::Relaxed) < n {
                        assert!(Instant::now() < deadline, "run did not reach {n} operations in time");
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            };
            wait_for(OPS / 3).await;
            c.kill(victim);
            let killed_at = Instant::now();
            wait_for(2 * OPS / 3).await;
            let down = killed_at.elapsed();
            c.restart(victim);
            (c, down)
        })
    };

    let per_worker = OPS / WORKERS;
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| tokio::spawn(worker(clients[w as usize].clone(), w, seed, per_worker, done.clone())))
        .collect();
    let mut results = Vec::new();
    for h in workers {
        let r = tokio::time::timeout_at(deadline.into(), h)
            .await
            .expect("workers finish within the run timeout")
            .expect("worker task");
        results.push(r.unwrap_or_else(|e| panic!("the application saw an error: {e}")));
    }
    let (c, down) = nemesis.await.expect("nemesis");
    let total: u64 = results.iter().map(|r| r.ops).sum();
    assert_eq!(total, OPS);
    eprintln!(
        "{OPS} ops in {:?}; node {victim} down for {down:?}; client stats {:?}",
        started.elapsed(),
        client.stats()
    );

    // Every counter holds exactly its acknowledged increments, read through
    // the client and through the harness (any node, linearizable).
    c.wait_ready().await;
    let check_deadline = Instant::now() + Duration::from_secs(60);
    for r in &results {
        for (k, n) in &r.increments {
            let want = Some(n.to_string().into_bytes());
            assert_eq!(client.get(k).await.expect("final read"), want, "counter {k:?}");
            assert_eq!(c.get_retry(k, check_deadline).await.expect("harness read"), want);
        }
    }
    drop(c);
}
