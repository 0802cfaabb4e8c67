//! Overload protection: a client over its token-bucket rate and requests
//! beyond the in-flight bound get RESOURCE_EXHAUSTED (OVERLOADED) at once,
//! other clients are unaffected, and a flood of distinct clients leaves
//! memory bounded.

mod common;

use std::time::Duration;
use std::time::Instant;

use common::Cluster;
use common::Opts;
use ringkv_proto::v1::ErrorCode;
use ringkv_proto::v1::GetRequest;
use ringkv_proto::v1::RequestHeader;

/// Requests per second and burst of the per-client limit under test.
const RATE: u32 = 50;
/// Distinct clients in the flood.
const FLOOD_CLIENTS: u64 = 20_000;
/// Concurrent flooding tasks.
const FLOOD_TASKS: u64 = 16;

fn get(client: u64) -> GetRequest {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&client.to_be_bytes());
    GetRequest {
        header: Some(RequestHeader {
            client_id: id.to_vec(),
            ..RequestHeader::default()
        }),
        key: b"k".to_vec(),
    }
}

fn is_overloaded(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::ResourceExhausted && common::error_detail(s).code == ErrorCode::Overloaded as i32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_inflight_bound_and_bounded_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("limits.toml");
    std::fs::write(&cfg, "[limits]\ninflight_requests_max = 4\n").expect("write config");
    let c = Cluster::start(Opts {
        nodes: 1,
        shards: 2,
        extra_args: vec![
            "--config".into(),
            cfg.display().to_string(),
            "--client-requests-per-second".into(),
            RATE.to_string(),
            "--client-burst".into(),
            RATE.to_string(),
        ],
        ..Opts::default()
    })
    .await;
    let kv = c.kv(1).await.expect("connect");

    // One client, as fast as it can for a bounded number of requests.
    let started = Instant::now();
    let (mut ok, mut refused) = (0u32, 0u32);
    for _ in 0..600 {
        match kv.clone().get(get(1)).await {
            Ok(_) => ok += 1,
            Err(s) if is_overloaded(&s) => refused += 1,
            Err(s) => panic!("unexpected error: {s:?}"),
        }
    }
    let allowed = f64::from(RATE) + f64::from(RATE) * started.elapsed().as_secs_f64() + 1.0;
    assert!(refused > 0, "a client over its rate was never refused ({ok} ok)");
    assert!(
        f64::from(ok) <= allowed,
        "{ok} requests passed, at most {allowed:.0} allowed"
    );
    // Another client is not affected.
    kv.clone().get(get(2)).await.expect("another client gets through");

    // A flood of distinct clients, bounded in count and time, with more
    // concurrency than the in-flight bound.
    let rss_before = c.node_stats(1).await.expect("stats").resident_memory_bytes;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut tasks = Vec::new();
    for t in 0..FLOOD_TASKS {
        let kv = kv.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut overloaded) = (0u64, 0u64);
            let mut i = t;
            while i < FLOOD_CLIENTS && Instant::now() < deadline {
                match kv.clone().get(get(1_000 + i)).await {
                    Ok(_) => ok += 1,
                    Err(s) if is_overloaded(&s) => overloaded += 1,
                    Err(s) => panic!("unexpected error: {s:?}"),
                }
                i += FLOOD_TASKS;
            }
            (ok, overloaded)
        }));
    }
    let (mut ok, mut overloaded) = (0, 0);
    for t in tasks {
        let (o, v) = t.await.expect("flood task");
        ok += o;
        overloaded += v;
    }
    eprintln!("flood: {ok} served, {overloaded} refused by the in-flight bound");
    assert_eq!(ok + overloaded, FLOOD_CLIENTS, "flood did not finish in time");
    assert!(
        overloaded > 0,
        "16 concurrent callers never hit inflight_requests_max = 4"
    );
    let rss_after = c.node_stats(1).await.expect("stats").resident_memory_bytes;
    let growth_mib = rss_after.saturating_sub(rss_before) as f64 / (1024.0 * 1024.0);
    eprintln!("resident memory {rss_before} -> {rss_after} bytes (+{growth_mib:.1} MiB)");
    assert!(growth_mib < 64.0, "memory grew by {growth_mib:.1} MiB under the flood");
}
