//! The systems under test, behind one enum so every workload runs the same
//! code against each:
//! - `ringkv-forward`: ringkv's gRPC API, every request to one node, which
//!   forwards to the shard leader when needed;
//! - `etcd`: a 3-member etcd through the etcd-client crate (linearizable
//!   reads, CAS as a transaction on the value);
//! - `rocksdb-local`: one process, ringkv's own RocksDB layout with synced
//!   writes through the same group committer: the ceiling without
//!   replication or network.
//!
//! - `ringkv`: the smart client, every request straight to its shard leader.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ringkv_proto::v1::compare_and_swap_request::Action;
use ringkv_proto::v1::compare_and_swap_request::Expected;
use ringkv_proto::v1::kv_client::KvClient;
use ringkv_proto::v1::CompareAndSwapRequest;
use ringkv_proto::v1::GetRequest;
use ringkv_proto::v1::PutRequest;
use ringkv_server::config::StorageConfig;
use ringkv_server::storage::group_commit::GroupCommit;
use ringkv_server::storage::group_commit::WriteOp;
use ringkv_server::storage::Cf;
use ringkv_server::storage::Db;
use serde::Deserialize;
use serde::Serialize;
use tonic::transport::Channel;

/// Most smart-client instances one bench process runs.
pub const CLIENT_INSTANCES_MAX: usize = 256;

/// Per-request timeout of the network backends.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Lock stripes serializing read-modify-write per key in `rocksdb-local`.
const LOCAL_CAS_STRIPES: usize = 1024;

/// Which system to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// ringkv through the smart client (`ringkv-client`): straight to leaders.
    Ringkv,
    RingkvForward,
    Etcd,
    RocksdbLocal,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Ringkv => "ringkv",
            Kind::RingkvForward => "ringkv-forward",
            Kind::Etcd => "etcd",
            Kind::RocksdbLocal => "rocksdb-local",
        }
    }
}

/// The local RocksDB ceiling: ringkv's storage without Raft or network.
pub struct Local {
    db: Arc<Db>,
    gc: GroupCommit,
    stripes: Vec<tokio::sync::Mutex<()>>,
}

/// A connection to the system under test; cheap to clone per task (see
/// [`Backend::for_task`]).
#[derive(Clone)]
pub enum Backend {
    /// One or more smart clients (`--client-instances`); a task uses one,
    /// the first unless [`Backend::for_task`] picked another.
    Smart(Arc<Vec<Arc<ringkv_client::Client>>>),
    Forward(KvClient<Channel>),
    /// Boxed: the etcd client is a few KiB.
    Etcd(Box<etcd_client::Client>),
    Local(Arc<Local>),
}

impl Backend {
    /// Connects. `endpoints` are `host:port` of the nodes (the first is used
    /// by `ringkv-forward`); `dir` holds the `rocksdb-local` database;
    /// `client_cfg` configures the smart client of `ringkv`.
    pub async fn connect(
        kind: Kind,
        endpoints: &[String],
        dir: &Path,
        client_cfg: ringkv_client::Config,
    ) -> anyhow::Result<Self> {
        Self::connect_instances(kind, endpoints, dir, client_cfg, 1).await
    }

    /// [`Backend::connect`] with `instances` independent smart clients
    /// (`ringkv` only: each its own session, connections and coalescing),
    /// as that many application processes would be.
    pub async fn connect_instances(
        kind: Kind,
        endpoints: &[String],
        dir: &Path,
        client_cfg: ringkv_client::Config,
        instances: usize,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            (1..=CLIENT_INSTANCES_MAX).contains(&instances),
            "client instances must be 1..={CLIENT_INSTANCES_MAX}"
        );
        anyhow::ensure!(
            instances == 1 || kind == Kind::Ringkv,
            "several client instances only for the ringkv backend"
        );
        Ok(match kind {
            Kind::Ringkv => {
                let mut clients = Vec::with_capacity(instances);
                for _ in 0..instances {
                    let c = ringkv_client::Client::connect_with(endpoints, client_cfg.clone())
                        .await
                        .context("connect ringkv")?;
                    clients.push(Arc::new(c));
                }
                Backend::Smart(Arc::new(clients))
            }
            Kind::RingkvForward => {
                let addr = endpoints.first().context("no endpoint")?;
                let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                    .connect_timeout(Duration::from_secs(5))
                    .timeout(REQUEST_TIMEOUT)
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .with_context(|| format!("connect {addr}"))?;
                Backend::Forward(KvClient::new(ch))
            }
            Kind::Etcd => {
                let opts = etcd_client::ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(REQUEST_TIMEOUT);
                let c = etcd_client::Client::connect(endpoints, Some(opts))
                    .await
                    .context("connect etcd")?;
                Backend::Etcd(Box::new(c))
            }
            Kind::RocksdbLocal => {
                let db = Db::open(dir, &StorageConfig::default())?;
                let gc = GroupCommit::start(db.clone(), StorageConfig::default().group_commit_requests_max)?;
                let stripes = (0..LOCAL_CAS_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect();
                Backend::Local(Arc::new(Local { db, gc, stripes }))
            }
        })
    }

    pub async fn read(&mut self, key: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
        match self {
            Backend::Smart(c) => Ok(c[0].get(key).await?),
            Backend::Forward(kv) => {
                let r = kv
                    .get(GetRequest {
                        header: None,
                        key: key.to_vec(),
                    })
                    .await?
                    .into_inner();
                Ok(r.found.then_some(r.value))
            }
            Backend::Etcd(c) => {
                let r = c.get(key, None).await?;
                Ok(r.kvs().first().map(|kv| kv.value().to_vec()))
            }
            Backend::Local(l) => Ok(l.db.get(Cf::Data, key)?),
        }
    }

    pub async fn write(&mut self, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        match self {
            Backend::Smart(c) => c[0].put(key, value).await?,
            Backend::Forward(kv) => {
                kv.put(PutRequest {
                    header: None,
                    key: key.to_vec(),
                    value: value.to_vec(),
                })
                .await?;
            }
            Backend::Etcd(c) => {
                c.put(key, value, None).await?;
            }
            Backend::Local(l) => {
                l.gc.write(vec![WriteOp::Put(Cf::Data, key.to_vec(), value.to_vec())])
                    .await?;
            }
        }
        Ok(())
    }

    /// Sets `key` to `new` if it holds `expected`; returns whether it did.
    pub async fn compare_and_swap(&mut self, key: &[u8], expected: &[u8], new: &[u8]) -> anyhow::Result<bool> {
        match self {
            Backend::Smart(c) => Ok(c[0].compare_and_swap(key, Some(expected), Some(new)).await?.succeeded),
            Backend::Forward(kv) => {
                let r = kv
                    .compare_and_swap(CompareAndSwapRequest {
                        header: None,
                        key: key.to_vec(),
                        expected: Some(Expected::ExpectedValue(expected.to_vec())),
                        action: Some(Action::NewValue(new.to_vec())),
                    })
                    .await?
                    .into_inner();
                Ok(r.succeeded)
            }
            Backend::Etcd(c) => {
                use etcd_client::Compare;
                use etcd_client::CompareOp;
                use etcd_client::Txn;
                use etcd_client::TxnOp;
                let txn = Txn::new()
                    .when([Compare::value(key, CompareOp::Equal, expected)])
                    .and_then([TxnOp::put(key, new, None)]);
                Ok(c.txn(txn).await?.succeeded())
            }
            Backend::Local(l) => {
                let stripe = (fnv(key) % LOCAL_CAS_STRIPES as u64) as usize;
                let _guard = l.stripes[stripe].lock().await;
                if l.db.get(Cf::Data, key)?.as_deref() != Some(expected) {
                    return Ok(false);
                }
                l.gc.write(vec![WriteOp::Put(Cf::Data, key.to_vec(), new.to_vec())])
                    .await?;
                Ok(true)
            }
        }
    }

    /// The connection task `t` of a run uses: with several smart clients,
    /// task `t` gets client `t mod instances`.
    pub fn for_task(&self, t: usize) -> Backend {
        match self {
            Backend::Smart(c) if c.len() > 1 => Backend::Smart(Arc::new(vec![c[t % c.len()].clone()])),
            other => other.clone(),
        }
    }

    /// WAL syncs so far, where the backend can tell (rocksdb-local).
    pub fn wal_syncs(&self) -> Option<u64> {
        match self {
            Backend::Local(l) => Some(l.gc.stats.syncs.load(std::sync::atomic::Ordering::Relaxed)),
            _ => None,
        }
    }
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
        (h ^ u64::from(*x)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn local_backend_reads_writes_and_swaps() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Backend::connect(Kind::RocksdbLocal, &[], dir.path(), Default::default())
            .await
            .unwrap();
        assert_eq!(b.read(b"k").await.unwrap(), None);
        b.write(b"k", b"1").await.unwrap();
        assert_eq!(b.read(b"k").await.unwrap(), Some(b"1".to_vec()));
        assert!(b.compare_and_swap(b"k", b"1", b"2").await.unwrap());
        assert!(!b.compare_and_swap(b"k", b"1", b"3").await.unwrap());
        assert_eq!(b.read(b"k").await.unwrap(), Some(b"2".to_vec()));
        assert!(b.wal_syncs().unwrap() >= 2);
    }
}
