//! Writes and reads in a loop through the smart client while you kill a
//! leader node (`kill -9`) and start it again; reports every error the
//! application saw (none are expected) and how many retries the client
//! made on its behalf.
//!
//! ```sh
//! make playground                         # in one shell
//! cargo run --release -p ringkv-client --example leader_kill -- 60
//! # meanwhile: ringkv cluster status; kill -9 the pid of a leader node
//! # (pgrep -f 'ringkv-server.*--node-id 1'), then start it again
//! ```
//!
//! Arguments: seconds to run (default 60). Endpoints: `RINGKV_ENDPOINTS`
//! (default the playground's 127.0.0.1:50051-50053).

use std::collections::BTreeMap;
use std::time::Duration;
use std::time::Instant;

use ringkv_client::Client;
use ringkv_client::Config;

const KEYS: usize = 32;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let secs: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(60);
    let endpoints = std::env::var("RINGKV_ENDPOINTS")
        .unwrap_or_else(|_| "127.0.0.1:50051,127.0.0.1:50052,127.0.0.1:50053".to_string());
    let cfg = Config {
        request_timeout: Duration::from_secs(60),
        max_attempts: 1000,
        ..Config::default()
    };
    let client = match Client::connect_with(endpoints.split(','), cfg).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot connect to {endpoints}: {e}");
            std::process::exit(3);
        }
    };
    println!("running {secs}s against {endpoints}: kill -9 a leader node now and restart it later");
    let run = format!("{:08x}", rand::random::<u32>());
    let mut latest: BTreeMap<usize, Vec<u8>> = BTreeMap::new();
    let counter = format!("leader-kill-{run}-counter");
    let mut count = 0u64;
    let (mut ops, mut errors, mut stale_reads) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    let mut report = Instant::now();
    let mut slowest = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(secs) {
        let i = (ops as usize) % KEYS;
        let key = format!("leader-kill-{run}-{i}");
        let t = Instant::now();
        let value = format!("v{ops}").into_bytes();
        match client.put(&key, &value).await {
            Ok(()) => {
                latest.insert(i, value);
            }
            Err(e) => {
                errors += 1;
                eprintln!("put {key}: {e} (kind {:?})", e.kind());
            }
        }
        match client.get(&key).await {
            Ok(v) if v.as_ref() == latest.get(&i) => {}
            Ok(v) => {
                stale_reads += 1;
                eprintln!("get {key}: {v:?} is not the latest acknowledged value");
            }
            Err(e) => {
                errors += 1;
                eprintln!("get {key}: {e} (kind {:?})", e.kind());
            }
        }
        let expected = (count > 0).then(|| count.to_string().into_bytes());
        match client
            .compare_and_swap(&counter, expected.as_deref(), Some((count + 1).to_string().as_bytes()))
            .await
        {
            Ok(o) if o.succeeded => count += 1,
            Ok(o) => {
                errors += 1;
                eprintln!("counter CAS at {count} failed: current {:?}", o.previous);
            }
            Err(e) => {
                errors += 1;
                eprintln!("counter CAS: {e} (kind {:?})", e.kind());
            }
        }
        slowest = slowest.max(t.elapsed());
        ops += 1;
        if report.elapsed() >= Duration::from_secs(1) {
            let s = client.stats();
            println!(
                "{:>4}s  rounds {ops:>6}  errors {errors}  stale reads {stale_reads}  retries {}  slowest round {slowest:?}",
                started.elapsed().as_secs(),
                s.attempts - s.operations
            );
            report = Instant::now();
            slowest = Duration::ZERO;
        }
    }
    let s = client.stats();
    println!(
        "done: {ops} rounds (put + get + CAS), {errors} errors, {stale_reads} stale reads, counter {count}, \
         client retries {}, routing refreshes {}, NOT_LEADER answers {}",
        s.attempts - s.operations,
        s.routing_refreshes,
        s.not_leader
    );
    if errors > 0 || stale_reads > 0 {
        std::process::exit(1);
    }
}
