//! Concurrent puts that reach a shard leader together share Raft entries:
//! the leader proposes what queued while an entry was in flight as one
//! entry. Without a session (plain gRPC callers) they become one
//! `BatchPut`; with sessions (many smart clients) one `Multi` whose parts
//! keep their own exactly-once records. Every put sent concurrently through
//! a node that does not lead the shard (so forwarded) must be acknowledged
//! and then read back with its own value, the shard must have applied
//! fewer entries than there were puts, and a retry of a merged sessioned
//! put must be answered from its session, not applied again.

mod common;

use std::time::Duration;
use std::time::Instant;

use common::Cluster;
use common::Opts;
use ringkv_proto::v1::GetRequest;
use ringkv_proto::v1::PutRequest;
use ringkv_proto::v1::RequestHeader;

const SHARDS: u32 = 4;
const SHARD: u64 = 1;
/// Concurrent puts, all at once.
const PUTS: usize = 200;
/// Longest one put or read may take on a starved machine.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sessionless_puts_share_entries_and_all_land() {
    let seed = common::seed(55);
    let (c, leader, via, before) = start(seed).await;

    let key = |i: usize| common::key_in_shard(&format!("t55-{seed}-{i}"), SHARD, SHARDS);
    let value = |i: usize| format!("t55-value-{i}-{seed}").into_bytes();
    let kv = c.kv(via).await.expect("kv");
    let mut puts = Vec::with_capacity(PUTS);
    for i in 0..PUTS {
        let mut kv = kv.clone();
        let (k, v) = (key(i), value(i));
        puts.push(tokio::spawn(async move {
            let mut req = tonic::Request::new(PutRequest {
                header: None,
                key: k,
                value: v,
            });
            req.set_timeout(REQUEST_TIMEOUT);
            kv.put(req).await.map(|_| ())
        }));
    }
    for (i, p) in puts.into_iter().enumerate() {
        let r = p.await.expect("put task");
        assert!(r.is_ok(), "seed {seed}: put {i} through node {via} failed: {r:?}");
    }
    let after = c.applied_on(leader, SHARD).await.expect("applied index");
    let entries = after.saturating_sub(before);
    eprintln!("{PUTS} concurrent puts through node {via} took {entries} entries on shard {SHARD} (leader {leader})");
    // Leadership may move under load; the entries are counted on the node
    // that led at the start, which still applies every entry.
    assert!(
        entries < PUTS as u64,
        "seed {seed}: {PUTS} concurrent sessionless puts took {entries} Raft entries: none were merged"
    );

    // Every acknowledged put is there with its own value.
    check_values(&c, via, seed, key, value).await;
}

/// A cluster with `SHARDS` shards whose shard `SHARD` took a first put;
/// returns it, the shard's leader, another node, and the leader's applied
/// index.
async fn start(seed: u64) -> (Cluster, u64, u64, u64) {
    let c = Cluster::start(Opts {
        shards: SHARDS,
        status_ports: true,
        ..Opts::default()
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let warm = common::key_in_shard(&format!("t55-{seed}-warm"), SHARD, SHARDS);
    c.put_retry(&warm, b"warm", deadline).await.expect("first put");
    let leader = c.leader_of(SHARD).await.expect("shard leader");
    let via = c.nodes.keys().copied().find(|&id| id != leader).expect("a follower");
    let before = c.applied_on(leader, SHARD).await.expect("applied index");
    (c, leader, via, before)
}

/// Reads every put's key back linearizably through a node other than
/// `via` and checks it holds `value(i)`.
async fn check_values(
    c: &Cluster,
    via: u64,
    seed: u64,
    key: impl Fn(usize) -> Vec<u8>,
    value: impl Fn(usize) -> Vec<u8>,
) {
    let reader = c.nodes.keys().copied().find(|&id| id != via).expect("another node");
    let mut kv = c.kv(reader).await.expect("kv");
    for i in 0..PUTS {
        let mut req = tonic::Request::new(GetRequest {
            header: None,
            key: key(i),
        });
        req.set_timeout(REQUEST_TIMEOUT);
        let r = kv.get(req).await.expect("get").into_inner();
        assert!(r.found, "seed {seed}: acknowledged put {i} is missing");
        assert_eq!(
            r.value,
            value(i),
            "seed {seed}: put {i} has another put's value, or was applied again by its retry"
        );
    }
}

/// A distinct client id per put: `PUTS` clients with one write each.
fn client_id(seed: u64, i: usize) -> Vec<u8> {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&seed.to_le_bytes());
    id[8..].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    id.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_of_many_sessions_share_entries_exactly_once() {
    let seed = common::seed(56);
    let (c, leader, via, before) = start(seed).await;

    let key = |i: usize| common::key_in_shard(&format!("t55s-{seed}-{i}"), SHARD, SHARDS);
    let value = |i: usize, attempt: u8| format!("t55s-value-{i}-{attempt}-{seed}").into_bytes();
    let kv = c.kv(via).await.expect("kv");
    let put = |i: usize, attempt: u8| {
        let mut kv = kv.clone();
        let (k, v) = (key(i), value(i, attempt));
        let header = RequestHeader {
            client_id: client_id(seed, i),
            sequence: 1,
            ..RequestHeader::default()
        };
        tokio::spawn(async move {
            let mut req = tonic::Request::new(PutRequest {
                header: Some(header),
                key: k,
                value: v,
            });
            req.set_timeout(REQUEST_TIMEOUT);
            kv.put(req).await.map(|_| ())
        })
    };
    let puts: Vec<_> = (0..PUTS).map(|i| put(i, 0)).collect();
    for (i, p) in puts.into_iter().enumerate() {
        let r = p.await.expect("put task");
        assert!(r.is_ok(), "seed {seed}: put {i} through node {via} failed: {r:?}");
    }
    let after = c.applied_on(leader, SHARD).await.expect("applied index");
    let entries = after.saturating_sub(before);
    eprintln!("{PUTS} concurrent puts of {PUTS} sessions through node {via} took {entries} entries (leader {leader})");
    assert!(
        entries < PUTS as u64,
        "seed {seed}: {PUTS} concurrent puts with sessions took {entries} Raft entries: none were merged"
    );
    // The leader's metrics say so too.
    let status = c.nodes[&leader].status_addr.clone().expect("status port");
    let merged = common::metric(&status, "ringkv_merged_requests_total").expect("merged requests metric");
    assert!(
        merged >= 2.0,
        "seed {seed}: the leader reports {merged} merged requests"
    );

    // The same sequences again, concurrently and with other values, as a
    // client retrying after lost replies would: each must be answered
    // from its session (merged again or not) and change nothing.
    let retries: Vec<_> = (0..PUTS).map(|i| put(i, 1)).collect();
    for (i, p) in retries.into_iter().enumerate() {
        let r = p.await.expect("retry task");
        assert!(r.is_ok(), "seed {seed}: retry of put {i} failed: {r:?}");
    }
    check_values(&c, via, seed, key, |i| value(i, 0)).await;
}
