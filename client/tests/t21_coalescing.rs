//! Coalesced puts and gets against a real 3-node cluster. 64 tasks share
//! one client; each writes its own keys in turn and reads every write back
//! at once, so most puts and gets leave in `BatchPut` and `BatchGet`
//! batches. Every acknowledged put is read back, by the writer at once and
//! by a fresh client at the end; concurrent puts to one key leave one of
//! the written values. A client with coalescing off sends no batch.

#[path = "../../server/tests/common/mod.rs"]
mod common;

use std::time::Duration;

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
