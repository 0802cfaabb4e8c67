//! Benchmark: the same write load twice, once through the smart client
//! (each request straight to its shard's leader) and once sent entirely to
//! one node that forwards whatever it does not lead. Prints ops/s for both.
//!
//! ```sh
//! make playground    # in one shell
//! cargo run --release -p ringkv-client --example direct_vs_forward -- 20000 32
//! ```
//!
//! Arguments: operations per phase (default 20000) and concurrent requests
//! (default 32). Endpoints: `RINGKV_ENDPOINTS` (default the playground's);
//! the forwarding phase sends everything to the first one. The forwarding
//! phase sends plain puts without an exactly-once session, so it does
//! slightly less work per write than the smart client: the comparison
//! favours forwarding.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use ringkv_client::proto::kv_client::KvClient;
use ringkv_client::proto::PutRequest;
use ringkv_client::Client;

const VALUE_BYTES: usize = 100;

async fn smart(client: &Client, ops: u64, concurrency: u64, run: &str) -> (Duration, u64) {
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, next, errors, run) = (client.clone(), next.clone(), errors.clone(), run.to_string());
            tokio::spawn(async move {
                let value = vec![b'v'; VALUE_BYTES];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= ops {
                        break;
                    }
                    if client.put(format!("bench-{run}-direct-{i}"), &value).await.is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    (started.elapsed(), errors.load(Ordering::Relaxed))
}

async fn forwarded(endpoint: &str, ops: u64, concurrency: u64, run: &str) -> (Duration, u64) {
    let uri = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    };
    let channel = tonic::transport::Endpoint::from_shared(uri)
        .expect("endpoint")
        .tcp_nodelay(true)
        .connect()
        .await
        .expect("connect to the forwarding node");
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (mut kv, next, errors, run) = (
                KvClient::new(channel.clone()),
                next.clone(),
                errors.clone(),
                run.to_string(),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= ops {
                        break;
                    }
                    let req = PutRequest {
                        header: None,
                        key: format!("bench-{run}-forward-{i}").into_bytes(),
                        value: vec![b'v'; VALUE_BYTES],
                    };
                    if kv.put(req).await.is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    (started.elapsed(), errors.load(Ordering::Relaxed))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let ops: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let concurrency: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(32);
    let endpoints = std::env::var("RINGKV_ENDPOINTS")
        .unwrap_or_else(|_| "127.0.0.1:50051,127.0.0.1:50052,127.0.0.1:50053".to_string());
    let list: Vec<&str> = endpoints.split(',').collect();
    let client = Client::connect(&list).await.unwrap_or_else(|e| {
        eprintln!("cannot connect to {endpoints}: {e}");
        std::process::exit(3);
    });
    let run = format!("{:08x}", rand::random::<u32>());
    println!("{ops} puts of {VALUE_BYTES} B per phase, {concurrency} in flight");

    // Warm up both paths (connections, leaders known).
    let _ = smart(&client, 200, concurrency, &format!("{run}w")).await;
    let _ = forwarded(list[0], 200, concurrency, &format!("{run}w")).await;

    let (d, e1) = smart(&client, ops, concurrency, &run).await;
    let direct = ops as f64 / d.as_secs_f64();
    let s = client.stats();
    println!(
        "direct (smart client):   {direct:>9.0} ops/s  ({d:.2?}, {e1} errors, {} answers were forwarded)",
        s.forwarded
    );
    let (d, e2) = forwarded(list[0], ops, concurrency, &run).await;
    let fwd = ops as f64 / d.as_secs_f64();
    println!(
        "all to {} (forwarding): {fwd:>9.0} ops/s  ({d:.2?}, {e2} errors)",
        list[0]
    );
    println!("direct / forwarded = {:.2}x", direct / fwd);
}
